"""Experiment configs shipped with the package, found by name (`modulenet search --config cifar10_resnet`)."""
