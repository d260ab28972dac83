rule prepare_heal:
    input:
        heal_inputs(),
    output:
        "results/data/heal.jsonl",
    log:
        "logs/prepare_heal.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=HEAL_SETTINGS,
    shell:
        "layerprune prepare-heal --settings {params.settings:q} --bigbench-dir resources/bigbench --out {output:q} > {log:q} 2>&1"


rule recover:
    input:
        model="results/pruned/{model}/{method}/{ratio}",
        dataset=recovery_dataset,
    output:
        directory("results/recovered/{model}/{method}/{ratio}/{recovery}"),
    log:
        "logs/recover/{model}/{method}/{ratio}/{recovery}.log",
    benchmark:
        "benchmarks/recover/{model}/{method}/{ratio}/{recovery}.tsv"
    wildcard_constraints:
        recovery="data|sgr|heal",
    priority: CRITICAL_PATH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("recover")
    resources:
        **job_resources("recover"),
    params:
        settings=RECOVERY_SETTINGS,
        # one process per GPU (accelerate/torchrun) when resources.recover asks for >1
        launcher=rule_command_prefix(config["resources"], "recover"),
    shell:
        "{params.launcher} recover --model {input.model:q} --dataset {input.dataset:q} --out {output:q}"
        " --recovery {wildcards.recovery:q} --settings {params.settings:q} --threads {threads} > {log:q} 2>&1"


# kd, kd_onpolicy: the pruned student learns the dense checkpoint's token distributions on the SGR pairs
rule recover_kd:
    input:
        model="results/pruned/{model}/{method}/{ratio}",
        dataset="results/selfgen/{model}.jsonl",
        teacher=lambda wc: dense_checkpoint(wc.model),
    output:
        directory("results/recovered/{model}/{method}/{ratio}/{recovery}"),
    log:
        "logs/recover_kd/{model}/{method}/{ratio}/{recovery}.log",
    benchmark:
        "benchmarks/recover_kd/{model}/{method}/{ratio}/{recovery}.tsv"
    wildcard_constraints:
        recovery="|".join(DISTILLATIONS),
    priority: CRITICAL_PATH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("recover")
    resources:
        **job_resources("recover"),
    params:
        settings=lambda wc: distill_settings_json(config, wc.recovery),
        launcher=rule_command_prefix(config["resources"], "recover"),
    shell:
        "{params.launcher} recover --model {input.model:q} --dataset {input.dataset:q} --teacher {input.teacher:q}"
        " --out {output:q} --recovery {wildcards.recovery:q} --settings {params.settings:q} --threads {threads}"
        " > {log:q} 2>&1"
