rule prepare_heal:
    input:
        heal_inputs(),
    output:
        shared_path("heal/{fp}.jsonl"),
    log:
        "logs/prepare_heal/{fp}.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=HEAL_SETTINGS,
    shell:
        "layerprune prepare-heal --settings {params.settings:q} --bigbench-dir resources/bigbench"
        " --out {output:q} > {log:q} 2>&1"


rule recover:
    input:
        model=lambda wc: pruned_checkpoint(wc.model, wc.method, wc.ratio),
        dataset=recovery_dataset,
    output:
        directory(recovered_checkpoint("{model}", "{method}", "{ratio}", "{recovery}", "{replicate}")),
    log:
        study_log("recover", "{model}/{method}/{ratio}/{recovery}{replicate}"),
    benchmark:
        study_benchmark("recover", "{model}/{method}/{ratio}/{recovery}{replicate}")
    wildcard_constraints:
        recovery=recovery_pattern("recover"),
        replicate=REPLICATE_PATTERN,
    priority: CRITICAL_PATH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("recover")
    resources:
        **job_resources("recover"),
    params:
        settings=recovery_settings,  # the study's seed or the replicate's training seed
        # one process per GPU (accelerate/torchrun) when resources.recover asks for >1
        launcher=rule_command_prefix(config["resources"], "recover"),
    shell:
        "{params.launcher} recover --model {input.model:q} --dataset {input.dataset:q} --out {output:q}"
        " --recovery {wildcards.recovery:q} --settings {params.settings:q} --threads {threads} > {log:q} 2>&1"


# The distillations (layerprune.registry.RECOVERIES: teacher): the pruned student learns the dense checkpoint's
# token distributions
rule recover_kd:
    input:
        model=lambda wc: pruned_checkpoint(wc.model, wc.method, wc.ratio),
        dataset=recovery_dataset,
        teacher=recovery_teacher,
    output:
        directory(recovered_checkpoint("{model}", "{method}", "{ratio}", "{recovery}", "{replicate}")),
    log:
        study_log("recover_kd", "{model}/{method}/{ratio}/{recovery}{replicate}"),
    benchmark:
        study_benchmark("recover_kd", "{model}/{method}/{ratio}/{recovery}{replicate}")
    wildcard_constraints:
        recovery=recovery_pattern("recover_kd"),
        replicate=REPLICATE_PATTERN,
    priority: CRITICAL_PATH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("recover")
    resources:
        **job_resources("recover"),
    params:
        settings=kd_settings,
        launcher=rule_command_prefix(config["resources"], "recover"),
    shell:
        "{params.launcher} recover --model {input.model:q} --dataset {input.dataset:q} --teacher {input.teacher:q}"
        " --out {output:q} --recovery {wildcards.recovery:q} --settings {params.settings:q} --threads {threads}"
        " > {log:q} 2>&1"
