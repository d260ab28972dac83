rule aggregate:
    input:
        results=all_evaluations(),
        scores=expand("results/scores/{model}/{method}.json", model=MODELS, method=METHODS),
    output:
        summary="results/summary.csv",
        report="results/report.md",
        metrics="results/metrics.json",
        overlap="results/removal_overlap.csv",
        plots=expand("results/plots/{model}__{task}.png", model=MODELS, task=TASKS),
        removal_maps=expand("results/plots/{model}__removal_map.png", model=MODELS),
    shell:
        "layerprune aggregate --results {input.results} --scores {input.scores} --out-dir results"
