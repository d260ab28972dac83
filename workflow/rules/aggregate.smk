rule aggregate:
    input:
        results=all_evaluations(),
        scores=expand("results/scores/{model}/{method}.json", model=MODELS, method=METHODS),
    output:
        summary="results/summary.csv",
        report=report("results/report.md", caption="../report/report.rst", category="Report"),
        metrics="results/metrics.json",
        overlap="results/removal_overlap.csv",
        retention=report("results/retention.csv", category="Tables"),
        retention_by_type=report("results/retention_by_type.csv", category="Tables"),
        findings=report("results/findings.csv", category="Tables"),
        tasks_counted=report("results/tasks_counted.csv", category="Tables"),
        degeneration="results/degeneration.csv",
        error_buckets="results/error_buckets.csv",
        arithmetic="results/arithmetic.csv",
        headline=report(
            "results/plots/retention_by_type.png",
            caption="../report/headline.rst",
            category="Retention",
        ),
        error_bucket_plot=report("results/plots/error_buckets.png", category="Diagnostics"),
        degeneration_plot=report("results/plots/degeneration.png", category="Diagnostics"),
        plots=report(
            expand("results/plots/{model}__{task}.png", model=MODELS, task=EVALUATED_TASKS),
            category="Metric vs ratio",
        ),
        removal_maps=report(
            expand("results/plots/{model}__removal_map.png", model=MODELS),
            category="Scoring methods",
        ),
    log:
        "logs/aggregate.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=REPORT_SETTINGS,
    shell:
        "layerprune aggregate --results {input.results:q} --scores {input.scores:q} --out-dir results"
        " --benchmarks benchmarks --settings {params.settings:q} > {log:q} 2>&1"
