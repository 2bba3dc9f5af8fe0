"""``mnist-bench report``: one sweep's results, read from MLflow only, as Markdown, self-contained HTML,
a CSV and PNG plots, written to a folder and logged to the sweep's parent run under ``report/``.

The sweep is its parent run (by id, by name, or the latest one); its child runs give the params,
tags and summary metrics, their metric histories the curves and the seconds per epoch. Runs that
failed, were killed or diverged are kept out of the means but always listed, beside the cells of the
sweep that never ran, so that a report never looks more complete than its sweep was.

Data flows one way: ``reading`` (MLflow -> frames) -> ``tables`` (pure pandas) -> ``document`` (what the
report says, as blocks, with ``plots``) -> ``render`` (Markdown, HTML, CSV); ``cli`` selects and writes.

    python -m mnist_bench.report [--sweep latest|NAME|RUN_ID] [--filter KEY=VALUE ...] [--out DIR]
"""
