"""Bad input through the real command line: one line naming the problem and its fix, exit
status 2, no traceback, and nothing saved changed (every case runs against the same folder of
saved files: a knowledge base, datasets, a finished run and damaged copies of it, config files),
all before any network is evaluated."""

import hashlib
import json
import re
import shutil

import pytest

from modulenet_jax.cli import main
from modulenet_jax.config import load_config
from modulenet_jax.data import save_bundle
from modulenet_jax.search.runner import Run, search
from modulenet_jax.space import SearchSpace
from tests.test_runner import SMALL

pytestmark = pytest.mark.xdist_group("bad_input")  # module fixtures built once (make test: --dist loadgroup)

CONFIG = "cifar10_resnet"


def _run_set(d) -> list[str]:
    """The overrides of the saved run: the tiny knowledge base and data, two generations."""
    return [*SMALL, "search.generations=2", f"knowledge.path={d / 'kb'}", f"data.source={d / 'tiny.npz'}"]


def _image_folder(root, classes, size, per_class=2):
    from PIL import Image

    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (i, 40, 80)).save(root / split / c / f"{i}.jpg")
    return root


CLASSES = tuple(f"class{i}" for i in range(10))
CONFIG_FILES = {
    "syntax.py": "import ml_collections\ndef get_config(:\n",
    "raising.py": "def get_config():\n    return {}['seed']\n",
    "missing.py": f"from modulenet_jax.configs.{CONFIG} import get_config as base\n"
                  "def get_config():\n    c = base()\n    del c.search['algorithm']\n    return c\n",
    "extra.py": f"from modulenet_jax.configs.{CONFIG} import get_config as base\n"
                "def get_config():\n    c = base()\n    c.search.speed = 3\n    return c\n",
}


@pytest.fixture(scope="module")
def saved(tiny_kb, tiny_dataset, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    tiny_kb.save(d / "kb")
    save_bundle(tiny_dataset, d / "tiny.npz", None, seed=0)
    (d / "junk.th").write_text("hello\n")
    (d / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    (d / "afile").write_text("a file, not a folder\n")
    (d / "notrun").mkdir()
    (d / "notrun" / "notes.txt").write_text("someone's notes\n")
    (d / "corrupt-kb").mkdir()
    (d / "corrupt-kb" / "index.json").write_text('{"format": 1, "sources": [')
    shutil.copytree(d / "kb", d / "kb-no-records")
    index = json.loads((d / "kb" / "index.json").read_text())
    (d / "kb-no-records" / "index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "records"}))
    shutil.copytree(d / "kb", d / "kb-cut-params")
    for f in (d / "kb-cut-params" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[:10])
    for name, text in CONFIG_FILES.items():
        (d / name).write_text(text)
    _image_folder(d / "big", CLASSES, 64, per_class=7)  # enough for the tiny protocol: only the size is wrong
    _image_folder(d / "three", CLASSES[:3], 32)
    (_image_folder(d / "broken", CLASSES, 32) / "train" / "class3" / "1.jpg").write_text("not a jpeg")
    cut = _image_folder(d / "truncated", CLASSES, 32) / "test" / "class7" / "0.jpg"
    cut.write_bytes(cut.read_bytes()[:300])
    search(Run.from_config(load_config(CONFIG, _run_set(d)), kb=tiny_kb, dataset=tiny_dataset), d / "run",
           log=lambda m: None)
    for damage in ("corrupt-state", "not-a-state", "corrupt-history", "cut-history", "corrupt-config", "nan-fitness",
                   "foreign-genotype", "no-final-rows"):
        shutil.copytree(d / "run", d / f"run-{damage}")
    (d / "run-corrupt-state" / "state.json").write_text('{"generation": 2, "rng": ')
    (d / "run-not-a-state" / "state.json").write_text("[1, 2]\n")
    lines = (d / "run" / "history.jsonl").read_text().splitlines(keepends=True)
    (d / "run-corrupt-history" / "history.jsonl").write_text(lines[0] + "{oops\n" + "".join(lines[2:]))
    (d / "run-cut-history" / "history.jsonl").write_text(lines[0])
    (d / "run-corrupt-config" / "config.json").write_text("{")
    nan = json.loads(lines[0]) | {"error": float("nan")}
    (d / "run-nan-fitness" / "history.jsonl").write_text(json.dumps(nan) + "\n" + "".join(lines[1:]))
    state = json.loads((d / "run" / "state.json").read_text())
    state["pop_X"][0][0] = 99  # a stem gene no space of the run has
    (d / "run-foreign-genotype" / "state.json").write_text(json.dumps(state))
    (d / "run-no-final-rows" / "final.json").write_text("{}")
    (d / "cfg").mkdir()
    (d / "cfg" / "config.json").write_text("{}")
    (d / "plots").mkdir()
    return d


def _search(d, *overrides, out="run"):
    return ["search", "--config", CONFIG, "--out", str(d / out), "--set", *_run_set(d), *overrides]


def _evaluate(d, *args, data="tiny.npz"):
    return ["evaluate", "--source", "cifar_resnet8", "--kb", str(d / "kb"), "--data", str(d / data), *args]


def _genotype(d, genotype: str):
    return ["evaluate", "--config", CONFIG, "--set", f"knowledge.path={d / 'kb'}", "protocol.fit_images=64",
            "protocol.stitch_images=32", "protocol.batch_size=32", "--data", str(d / "tiny.npz"),
            "--genotype", genotype]


# (name, argv from the saved folder `d` and the tiny space's number of genes `n`, what the message says)
BAD_INPUT = [
    # the config: types, ranges, rules between fields, files
    ("wrong type", lambda d, n: _search(d, "search.population='12'"),
     "search.population must be an integer >= 2, got '12'; fix it in the config or with --set search.population="),
    ("below range", lambda d, n: _search(d, "search.population=1"), "search.population must be an integer >= 2, got 1"),
    ("negative seed", lambda d, n: _search(d, "seed=-1"), "seed must be an integer >= 0, got -1"),
    ("not a choice", lambda d, n: _search(d, "protocol.bn='x'"),
     "protocol.bn must be one of 'source', 'recalibrate', 'from_junction', got 'x'"),
    ("unknown objective", lambda d, n: _search(d, "search.objectives=('error', 'acc')"),
     "search.objectives must be a non-empty tuple of distinct names from 'error', 'params', 'flops'"),
    ("probability above 1", lambda d, n: _search(d, "search.crossover_prob=1.5"),
     "search.crossover_prob must be a number in [0, 1], got 1.5"),
    ("stitch images above fit images", lambda d, n: _search(d, "protocol.stitch_images=9999"),
     "protocol.stitch_images (9999) must be at most protocol.fit_images (64)"),
    ("depths crossed", lambda d, n: _search(d, "space.min_depth=3", "space.max_depth=2"),
     "space.min_depth (3) must be at most space.max_depth (2)"),
    ("unknown --set key", lambda d, n: _search(d, "search.populaton=3"),
     "no config field 'populaton' (fields there: algorithm, continue_run_prob"),
    ("--set without =", lambda d, n: _search(d, "search.population"), "must look like key.sub=value"),
    ("--set of a whole section", lambda d, n: _search(d, "search=3"),
     "override 'search': search is a section, not a field; set its fields, search.<field>=..."),
    ("config file with a syntax error", lambda d, n: ["search", "--config", str(d / "syntax.py")],
     "syntax.py line 2: invalid syntax; fix the config file"),
    ("config file that raises", lambda d, n: ["search", "--config", str(d / "raising.py")],
     "get_config() raised KeyError: 'seed'; fix the config file"),
    ("config without a field", lambda d, n: ["search", "--config", str(d / "missing.py")],
     "the config has no search.algorithm; add it"),
    ("config with an unknown field", lambda d, n: ["search", "--config", str(d / "extra.py")],
     "unknown config field 'search.speed'"),
    ("config path", lambda d, n: ["search", "--config", str(d / "nope.py")], "no config file at"),
    ("unknown config name", lambda d, n: ["fidelity", "--config", "cifar10_resnett"],
     "no packaged config 'cifar10_resnett'; known: cifar10_resnet, cifar10_resnet_gpu"),
    # the output folder and the run in it
    ("--out is a file", lambda d, n: _search(d, out="afile"), "afile is a file, not a folder; choose a folder"),
    ("--out below a file", lambda d, n: _search(d, out="afile/run"), "afile is a file, not a folder; choose another"),
    ("--out not writable", lambda d, n: ["search", "--config", CONFIG, "--out", "/proc/modulenet-run"],
     "--out /proc/modulenet-run: cannot write in /proc"),
    ("--out not a run folder", lambda d, n: _search(d, out="notrun"),
     "notrun is a folder but not a run folder (no config.json); choose another --out"),
    ("a different config", lambda d, n: _search(d, "seed=5"),
     "holds a run of a different config (seed: 0 there, 5 here); choose a new --out, or pass --restart"),
    ("fewer generations than done", lambda d, n: _search(d, "search.generations=1"),
     "has 2 generations done; search.generations must be at least 2 to resume it, or start the run over with "
     "`modulenet search --restart`"),
    ("corrupt state", lambda d, n: _search(d, out="run-corrupt-state"),
     "run-corrupt-state/state.json is not valid JSON (Expecting value: line 1 column 26 (char 25)): the state was "
     "changed outside modulenet; restore it, or start the run over with `modulenet search --restart`"),
    ("state of another shape", lambda d, n: _search(d, out="run-not-a-state"),
     "run-not-a-state/state.json does not hold a search state"),
    ("corrupt history line", lambda d, n: _search(d, out="run-corrupt-history"),
     "run-corrupt-history/history.jsonl line 2 is not a network's record"),
    ("corrupt run config", lambda d, n: _search(d, out="run-corrupt-config"),
     "run-corrupt-config/config.json is not valid JSON"),
    # the data, against the config and the knowledge base
    ("missing data", lambda d, n: _search(d, f"data.source={d / 'nothing'}", out="fresh"),
     "not a folder and not a known TFDS name"),
    ("an image that is not one", lambda d, n: _search(d, f"data.source={d / 'broken'}", out="fresh"),
     "/broken/train/class3/1.jpg (cannot identify image file"),
    ("a truncated image", lambda d, n: _search(d, f"data.source={d / 'truncated'}", out="fresh"),
     "/truncated/test/class7/0.jpg ("),
    ("not a bundle", lambda d, n: _search(d, f"data.source={d / 'bad.npz'}", out="fresh"),
     "bad.npz: not a readable .npz bundle"),
    ("more validation images than the data has", lambda d, n: _search(d, "data.val_size=500", out="fresh"),
     "data.val_size is 500, but tiny has only 64 images in the val split; lower data.val_size"),
    ("more fit images than the data has", lambda d, n: _search(d, "protocol.fit_images=5000", out="fresh"),
     "protocol.fit_images is 5000, but tiny has only 256 train images; lower protocol.fit_images"),
    ("a final table larger than the data", lambda d, n: _search(d, "final.size=100", out="fresh"),
     "final.size is 100, but tiny has only 64 images in the final split"),
    ("64 px images, 32 px modules", lambda d, n: _search(d, f"data.source={d / 'big'}", out="fresh"),
     "big's images are 64x64 px, but the knowledge base's modules were cut and costed at 32x32 px; set "
     "protocol.input_size=32"),
    ("resized to another size than the modules'", lambda d, n: _search(d, "protocol.input_size=48", out="fresh"),
     "protocol.input_size is 48, but the knowledge base's modules were cut and costed at 32x32 px"),
    ("corrupt knowledge base", lambda d, n: _search(d, f"knowledge.path={d / 'corrupt-kb'}", out="fresh"),
     "corrupt-kb/index.json is not valid JSON"),
    ("not a knowledge base", lambda d, n: ["kb", "show", str(d)], "not a knowledge base"),
    ("a knowledge base index without records", lambda d, n: ["kb", "show", str(d / "kb-no-records")],
     "kb-no-records/index.json is not a knowledge base index (KeyError: 'records'); build the knowledge base again"),
    ("a knowledge base with its params cut short", lambda d, n: ["kb", "show", str(d / "kb-cut-params")],
     "the files were cut short or changed; build the knowledge base again"),
    # evaluating a source as published, or a network under a config
    ("other classes as published", lambda d, n: _evaluate(d, data="three"),
     "cifar_resnet8 was trained on 10 classes, three has 3: as-published accuracy needs the source's classes"),
    ("64 px images as published", lambda d, n: _evaluate(d, data="big"),
     "big's images are 64x64 px, but cifar_resnet8 was trained on 32x32 px; resize the images to 32x32 px"),
    ("--size 0", lambda d, n: _evaluate(d, "--size", "0"), "argument --size: must be a positive integer, got '0'"),
    ("--size beyond the split", lambda d, n: _evaluate(d, "--split", "val", "--size", "100000"),
     "--size is 100000, but tiny has only 64 images in the val split"),
    ("negative --batch-size", lambda d, n: _evaluate(d, "--batch-size", "-1"),
     "argument --batch-size: must be a positive integer, got '-1'"),
    ("source not in the base", lambda d, n: ["evaluate", "--source", "cifar_resnet99", "--kb", str(d / "kb"),
                                             "--data", str(d / "tiny.npz")], "no source 'cifar_resnet99'"),
    ("evaluate without a network", lambda d, n: ["evaluate", "--data", str(d / "tiny.npz")], "give --source NAME"),
    ("genotype not JSON", lambda d, n: _genotype(d, "[1, 2"), "is not JSON"),
    ("genotype not integers", lambda d, n: _genotype(d, '["a"]'), "is not a list of integers"),
    ("genotype out of range", lambda d, n: _genotype(d, json.dumps([99] * n)), "gene stem = 99 is outside"),
    ("genotype beyond int64", lambda d, n: _genotype(d, json.dumps([10 ** 20] * n)), "is not a list of integers (each of at most 18 digits)"),
    ("--kb under --config", lambda d, n: [*_genotype(d, json.dumps([0] * n)), "--kb", str(d / "kb")],
     "--kb and --weights evaluate a source as published; under --config the knowledge base is the config's"),
    ("--genotype without --config", lambda d, n: [*_evaluate(d), "--genotype", "[0]"],
     "--genotype and --set need --config"),
    # the command line itself, checkpoints, run folders
    ("a required argument missing", lambda d, n: ["search"], "the following arguments are required: --config"),
    ("unknown command", lambda d, n: ["serach"], "invalid choice: 'serach'"),
    ("unknown pretrained source", lambda d, n: ["kb", "build", "--pretrained", "cifar_resnet99", "--out", str(d / "k")],
     "no known pretrained checkpoint 'cifar_resnet99'; known: cifar_resnet20"),
    ("kb build into a folder of something else", lambda d, n: ["kb", "build", "--pretrained", "cifar_resnet20",
                                                               "--out", str(d / "notrun")],
     "/notrun holds something else than a knowledge base; choose a new or empty folder"),
    ("kb build --out is a file", lambda d, n: ["kb", "build", "--pretrained", "cifar_resnet20", "--out",
                                              str(d / "afile")], "afile is a file, not a folder"),
    ("unknown zoo model", lambda d, n: ["convert", "--weights", str(d / "junk.th"), "--model", "resnet9000",
                                        "--out", str(d / "c")], "unknown model 'resnet9000'"),
    ("convert into a folder of something else", lambda d, n: ["convert", "--weights", str(d / "junk.th"), "--out",
                                                               str(d / "notrun")],
     "/notrun holds something else than a converted model; choose a new or empty folder"),
    ("not a checkpoint", lambda d, n: ["convert", "--weights", str(d / "junk.th"), "--out", str(d / "c")],
     "junk.th: not a PyTorch checkpoint (it starts with b'hell', not a zip archive or a pickle)"),
    ("runs show of no run", lambda d, n: ["runs", "show", str(d)], "is not a run folder (no config.json)"),
    ("runs show of a folder with another config.json", lambda d, n: ["runs", "show", str(d / "cfg")],
     "cfg/config.json has no search.generations: it is not a run's config"),
    ("a history cut short", lambda d, n: _search(d, out="run-cut-history"),
     "run-cut-history/state.json says were evaluated: the history was cut or replaced; restore it, or start the run "
     "over"),
    ("NaN fitness in the history", lambda d, n: _search(d, out="run-nan-fitness"),
     "run-nan-fitness/history.jsonl line 1 has no finite error; delete that line and those after it"),
    ("NaN fitness shown", lambda d, n: ["runs", "show", str(d / "run-nan-fitness")],
     "history.jsonl line 1 has no finite error"),
    ("a state genotype outside the space", lambda d, n: _search(d, "search.generations=3", out="run-foreign-genotype"),
     "run-foreign-genotype/state.json does not hold a nsga2 search state (GenotypeError: gene stem = 99 is outside"),
    ("a final table without rows", lambda d, n: ["runs", "show", str(d / "run-no-final-rows")],
     "run-no-final-rows/final.json has no rows"),
    ("--plot into a folder", lambda d, n: ["runs", "show", str(d / "run"), "--plot", str(d / "plots")],
     "plots is a folder; give a file name"),
    ("--plot in a format matplotlib lacks", lambda d, n: ["runs", "show", str(d / "run"), "--plot",
                                                          str(d / "plots" / "front.txt")],
     "matplotlib cannot write '.txt' files; end the name in .png"),
    ("--reference nan", lambda d, n: ["runs", "show", str(d / "run"), "--reference", "nan", "1e6"],
     "argument --reference: must be a positive number, got 'nan'"),
    ("a run's config.json as --config", lambda d, n: ["search", "--config", str(d / "cfg" / "config.json")],
     "config.json is not a config file: a config is a .py file defining get_config()"),
    ("a non-finite config number", lambda d, n: _search(d, "protocol.head_l2=1e999", out="fresh"),
     "protocol.head_l2 must be a number >= 0, got inf"),
    ("--set twice adds up", lambda d, n: [*_search(d, out="fresh"), "--set", "search.population=1"],
     "search.population must be an integer >= 2, got 1"),
    ("finetune --seed -1", lambda d, n: ["finetune", str(d / "run"), "--seed", "-1"],
     "argument --seed: must be an integer >= 0, got '-1'"),
    ("bench --budget 0", lambda d, n: ["bench", "--budget", "0"],
     "argument --budget: must be a positive number, got '0'"),
    ("bench --torch-max-w1 0", lambda d, n: ["bench", "--torch-max-w1", "0"],
     "argument --torch-max-w1: must be a positive integer, got '0'"),
    ("bench --name with a folder", lambda d, n: ["bench", "--config", CONFIG, "--name", "a/b", "--torch-modes"],
     "--name 'a/b' must be a file stem in --out"),
    ("runs compare with a corrupt run", lambda d, n: ["runs", "compare", str(d / "run"),
                                                      str(d / "run-corrupt-config")],
     "run-corrupt-config/config.json is not valid JSON"),
]


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("argv, message", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_and_status_2_and_changes_nothing(capsys, monkeypatch, tmp_path, saved, tiny_kb, argv,
                                                                message):
    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))  # decoded images are cached outside `saved`
    argv = argv(saved, SearchSpace(tiny_kb, "run").num_genes)
    before = snapshot(saved)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.match(r"modulenet( [a-z]+){0,2}: error: ", err) and err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err and "Traceback" not in err, err
    assert snapshot(saved) == before


def test_the_table_is_large():
    assert len(BAD_INPUT) >= 30 and len({name for name, *_ in BAD_INPUT}) == len(BAD_INPUT)
