def recovery_dataset(wildcards):
    """`sgr` trains on the dense model's answers, `data` on the prompt set's references, `heal` on plain text."""
    if wildcards.recovery == "sgr":
        return f"results/selfgen/{wildcards.model}.jsonl"
    if wildcards.recovery == "heal":
        return "results/data/heal.jsonl"
    return model_prompt_set(wildcards.model)


rule prepare_heal:
    input:
        heal_inputs(),
    output:
        "results/data/heal.jsonl",
    params:
        settings=HEAL_SETTINGS,
    shell:
        "layerprune prepare-heal --settings {params.settings:q} --bigbench-dir resources/bigbench --out {output:q}"


rule recover:
    input:
        model="results/pruned/{model}/{method}/{ratio}",
        dataset=recovery_dataset,
    output:
        directory("results/recovered/{model}/{method}/{ratio}/{recovery}"),
    wildcard_constraints:
        recovery="data|sgr|heal",
    params:
        settings=RECOVERY_SETTINGS,
        # one process per GPU (accelerate/torchrun) when resources.recover asks for >1
        launcher=rule_command_prefix(config["resources"], "recover"),
    threads: job_threads("recover")
    resources:
        **job_resources("recover"),
    shell:
        "{params.launcher} recover --model {input.model:q} --dataset {input.dataset:q} --out {output:q}"
        " --recovery {wildcards.recovery:q} --settings {params.settings:q} --threads {threads}"
