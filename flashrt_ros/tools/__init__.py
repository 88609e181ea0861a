"""Tools on top of the layers below: train, evaluate, replay, bench, report, demo."""
