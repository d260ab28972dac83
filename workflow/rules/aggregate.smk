rule aggregate:
    input:
        all_evaluations(),
    output:
        summary="results/summary.csv",
        report="results/report.md",
        metrics="results/metrics.json",
        plots=expand("results/plots/{model}__{task}.png", model=MODELS, task=TASKS),
    shell:
        "layerprune aggregate --results {input} --out-dir results"
