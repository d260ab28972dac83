# Every output lies under results/<study>/report/, and rule all requests rules.aggregate.output,
# so this list is the only one. Each figure has a vector copy
# (.svg) beside it; the error-bucket figure exists only when a code task is evaluated, the loss
# curves only when a recovery trains.
rule aggregate:
    input:
        results=all_evaluations(),
        scores=[score_file(model, method) for model, method in itertools.product(MODELS, METHODS)],
        recovered=all_recovered(),
    output:
        summary=report(f"{REPORT_DIR}/summary.csv", caption="../report/summary.rst", category="Tables"),
        report=report(f"{REPORT_DIR}/report.md", caption="../report/report.rst", category="Report"),
        landing=report(f"{REPORT_DIR}/report.rst", caption="../report/landing.rst", category="Report"),
        metrics=f"{REPORT_DIR}/metrics.json",
        overlap=f"{REPORT_DIR}/removal_overlap.csv",
        retention=report(f"{REPORT_DIR}/retention.csv", category="Tables"),
        retention_by_type=report(f"{REPORT_DIR}/retention_by_type.csv", category="Tables"),
        findings=report(f"{REPORT_DIR}/findings.csv", category="Tables"),
        recovery_by_ratio=report(f"{REPORT_DIR}/recovery_by_ratio.csv", category="Tables"),
        ratio_contrasts=report(f"{REPORT_DIR}/ratio_contrasts.csv", category="Tables"),
        tasks_counted=report(f"{REPORT_DIR}/tasks_counted.csv", category="Tables"),
        time=report(f"{REPORT_DIR}/time.csv", caption="../report/time.rst", category="Tables"),
        degeneration=f"{REPORT_DIR}/degeneration.csv",
        error_buckets=f"{REPORT_DIR}/error_buckets.csv",
        arithmetic=f"{REPORT_DIR}/arithmetic.csv",
        headline=report(
            f"{REPORT_DIR}/plots/retention_by_type.png",
            caption="../report/headline.rst",
            category="Retention",
        ),
        error_bucket_plot=(
            report(
                f"{REPORT_DIR}/plots/error_buckets.png",
                caption="../report/error_buckets.rst",
                category="Diagnostics",
            )
            if CODE_TASKS
            else []
        ),
        degeneration_plot=report(
            f"{REPORT_DIR}/plots/degeneration.png",
            caption="../report/degeneration.rst",
            category="Diagnostics",
        ),
        loss_plot=(
            report(
                f"{REPORT_DIR}/plots/recovery_loss.png",
                caption="../report/loss.rst",
                category="Recovery",
            )
            if all_recovered()
            else []
        ),
        plots=report(
            expand(f"{REPORT_DIR}/plots/{{model}}__{{task}}.png", model=MODELS, task=EVALUATED_TASKS),
            caption="../report/task.rst",
            category="Metric vs ratio",
        ),
        layer_scores=report(
            expand(f"{REPORT_DIR}/plots/{{model}}__layer_scores.png", model=MODELS),
            caption="../report/layer_scores.rst",
            category="Scoring methods",
        ),
        removal_maps=report(
            expand(f"{REPORT_DIR}/plots/{{model}}__removal_map.png", model=MODELS),
            caption="../report/removal_map.rst",
            category="Scoring methods",
        ),
    log:
        study_log("aggregate", "aggregate"),
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=REPORT_SETTINGS,
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
        # this study's jobs' benchmarks, and those of the shared jobs it uses (where they ran here)
        benchmarks=study_benchmark_sources(),
        study=STUDY,
    shell:
        "layerprune aggregate --results {input.results:q} --scores {input.scores:q} --recovered {input.recovered:q}"
        " --out-dir {params.out_dir:q} --benchmarks {params.benchmarks:q} --study {params.study:q}"
        " --settings {params.settings:q}"
        " > {log:q} 2>&1"
