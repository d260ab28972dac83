# Every output lies under results/report/: dvc.yaml versions that folder as one out, and rule all
# requests rules.aggregate.output, so this list is the only one. Each figure has a vector copy
# (.svg) beside it; the error-bucket figure exists only when a code task is evaluated, the loss
# curves only when a recovery trains.
rule aggregate:
    input:
        results=all_evaluations(),
        scores=expand("results/scores/{model}/{method}.json", model=MODELS, method=METHODS),
        recovered=all_recovered(),
    output:
        summary=report("results/report/summary.csv", caption="../report/summary.rst", category="Tables"),
        report=report("results/report/report.md", caption="../report/report.rst", category="Report"),
        landing=report("results/report/report.rst", caption="../report/landing.rst", category="Report"),
        metrics="results/report/metrics.json",
        overlap="results/report/removal_overlap.csv",
        retention=report("results/report/retention.csv", category="Tables"),
        retention_by_type=report("results/report/retention_by_type.csv", category="Tables"),
        findings=report("results/report/findings.csv", category="Tables"),
        recovery_by_ratio=report("results/report/recovery_by_ratio.csv", category="Tables"),
        ratio_contrasts=report("results/report/ratio_contrasts.csv", category="Tables"),
        tasks_counted=report("results/report/tasks_counted.csv", category="Tables"),
        time=report("results/report/time.csv", caption="../report/time.rst", category="Tables"),
        degeneration="results/report/degeneration.csv",
        error_buckets="results/report/error_buckets.csv",
        arithmetic="results/report/arithmetic.csv",
        headline=report(
            "results/report/plots/retention_by_type.png",
            caption="../report/headline.rst",
            category="Retention",
        ),
        error_bucket_plot=(
            report(
                "results/report/plots/error_buckets.png",
                caption="../report/error_buckets.rst",
                category="Diagnostics",
            )
            if CODE_TASKS
            else []
        ),
        degeneration_plot=report(
            "results/report/plots/degeneration.png",
            caption="../report/degeneration.rst",
            category="Diagnostics",
        ),
        loss_plot=(
            report(
                "results/report/plots/recovery_loss.png",
                caption="../report/loss.rst",
                category="Recovery",
            )
            if all_recovered()
            else []
        ),
        plots=report(
            expand("results/report/plots/{model}__{task}.png", model=MODELS, task=EVALUATED_TASKS),
            caption="../report/task.rst",
            category="Metric vs ratio",
        ),
        layer_scores=report(
            expand("results/report/plots/{model}__layer_scores.png", model=MODELS),
            caption="../report/layer_scores.rst",
            category="Scoring methods",
        ),
        removal_maps=report(
            expand("results/report/plots/{model}__removal_map.png", model=MODELS),
            caption="../report/removal_map.rst",
            category="Scoring methods",
        ),
    log:
        "logs/aggregate.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=REPORT_SETTINGS,
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "layerprune aggregate --results {input.results:q} --scores {input.scores:q} --recovered {input.recovered:q}"
        " --out-dir {params.out_dir:q} --benchmarks benchmarks --settings {params.settings:q} > {log:q} 2>&1"
