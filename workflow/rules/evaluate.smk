rule evaluate_dense:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        task=lambda wc: task_file(wc.task),
    output:
        shared_path("eval/{fp}/{model}/dense/{task}.json"),
    log:
        shared_log("evaluate_dense", "{fp}/{model}/{task}"),
    benchmark:
        shared_benchmark("evaluate_dense", "{fp}/{model}/{task}")
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    params:
        settings=evaluation_settings,
    shell:
        "layerprune evaluate --model {input.model:q} --task-file {input.task:q} --task-name {wildcards.task:q}"
        " --model-name {wildcards.model:q} --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


# A pruned checkpoint unrecovered (recovery `none`): shared by every study that prunes and evaluates alike.
rule evaluate_pruned:
    input:
        model=lambda wc: pruned_checkpoint(wc.model, wc.method, wc.ratio),
        task=lambda wc: task_file(wc.task),
    output:
        shared_path("eval/{fp}/{model}/{method}/{ratio}/none/{task}.json"),
    log:
        shared_log("evaluate_pruned", "{fp}/{model}/{method}/{ratio}/{task}"),
    benchmark:
        shared_benchmark("evaluate_pruned", "{fp}/{model}/{method}/{ratio}/{task}")
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    params:
        settings=evaluation_settings,
    shell:
        "layerprune evaluate --model {input.model:q} --task-file {input.task:q} --task-name {wildcards.task:q}"
        " --model-name {wildcards.model:q} --method {wildcards.method:q} --ratio {wildcards.ratio:q}"
        " --recovery none --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule evaluate_variant:
    input:
        model=variant_checkpoint,
        task=lambda wc: task_file(wc.task),
    output:
        eval_file("{model}", "{method}/{ratio}/{recovery}{replicate}", "{task}"),
    log:
        study_log("evaluate_variant", "{model}/{method}/{ratio}/{recovery}{replicate}/{task}"),
    benchmark:
        study_benchmark("evaluate_variant", "{model}/{method}/{ratio}/{recovery}{replicate}/{task}")
    wildcard_constraints:
        recovery="|".join(recovery for recovery in RECOVERIES if recovery != "none"),
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    params:
        settings=evaluation_settings,
    shell:
        "layerprune evaluate --model {input.model:q} --task-file {input.task:q} --task-name {wildcards.task:q}"
        " --model-name {wildcards.model:q} --method {wildcards.method:q} --ratio {wildcards.ratio:q}"
        " --recovery {wildcards.recovery:q} --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"
