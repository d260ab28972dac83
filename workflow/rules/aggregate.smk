# Every output lies under results/report/: dvc.yaml versions that folder as one out, and rule all
# requests rules.aggregate.output, so this list is the only one.
rule aggregate:
    input:
        results=all_evaluations(),
        scores=expand("results/scores/{model}/{method}.json", model=MODELS, method=METHODS),
    output:
        summary="results/report/summary.csv",
        report=report("results/report/report.md", caption="../report/report.rst", category="Report"),
        metrics="results/report/metrics.json",
        overlap="results/report/removal_overlap.csv",
        retention=report("results/report/retention.csv", category="Tables"),
        retention_by_type=report("results/report/retention_by_type.csv", category="Tables"),
        findings=report("results/report/findings.csv", category="Tables"),
        recovery_by_ratio=report("results/report/recovery_by_ratio.csv", category="Tables"),
        tasks_counted=report("results/report/tasks_counted.csv", category="Tables"),
        degeneration="results/report/degeneration.csv",
        error_buckets="results/report/error_buckets.csv",
        arithmetic="results/report/arithmetic.csv",
        headline=report(
            "results/report/plots/retention_by_type.png",
            caption="../report/headline.rst",
            category="Retention",
        ),
        error_bucket_plot=report("results/report/plots/error_buckets.png", category="Diagnostics"),
        degeneration_plot=report("results/report/plots/degeneration.png", category="Diagnostics"),
        plots=report(
            expand("results/report/plots/{model}__{task}.png", model=MODELS, task=EVALUATED_TASKS),
            category="Metric vs ratio",
        ),
        removal_maps=report(
            expand("results/report/plots/{model}__removal_map.png", model=MODELS),
            category="Scoring methods",
        ),
    log:
        "logs/aggregate.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=REPORT_SETTINGS,
    shell:
        "layerprune aggregate --results {input.results:q} --scores {input.scores:q} --out-dir results/report"
        " --benchmarks benchmarks --settings {params.settings:q} > {log:q} 2>&1"
