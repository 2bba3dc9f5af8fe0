"""``mnist-bench check``: holds MLflow sweeps or a pytest-benchmark file to ``conf/thresholds.yaml`` and
turns the verdict into an exit status for CI.

Accuracy floors are for fixed seeds, so they are tight. Time ceilings are ratios to one normaliser, the
epoch floor of ``mnist_bench.roofline`` measured on the same machine (the floor every CPU run logs, or the
one the benchmark suite probes beside each epoch), so one file holds on a laptop, on CI and on a GPU box.
A threshold that matches nothing fails as "no data": a gate never passes by checking nothing.

    python -m mnist_bench.check --quick              # CI: run the thresholds' gate sweeps, then check them
    python -m mnist_bench.check [--sweep latest|NAME|RUN_ID ...] [--tracking-uri URI] [--experiment NAME]
    python -m mnist_bench.check --benchmark-json PATH

Exit status: 0 when every threshold passes, 1 on a breach (one line each), 2 on bad input.

Modules: ``thresholds`` (the file, checked) -> ``evaluate`` (against runs or benchmarks); ``gate`` runs the
quick gate's sweeps; ``cli`` is the command.
"""
