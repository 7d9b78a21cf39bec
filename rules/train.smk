import json

# One run = experiment × seed. Its resolved config (run.yaml) is rewritten only when that experiment's
# settings or the package code change (params rerun trigger), so editing one experiment reruns only it.


def resolved_run(wildcards):
    return pipeline_config.resolve_experiment(CONFIG, wildcards.experiment, int(wildcards.seed))


# A shell job: Snakemake executes a `run:` block in a Snakemake process of its own (seconds each).
rule resolve:
    output:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/run.yaml",
    params:
        spec=lambda wildcards: json.dumps(resolved_run(wildcards)),
    log:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/logs/resolve.log",
    localrule: True
    shell:
        "pipeline resolve --run-spec {params.spec:q} --out {output:q} > {log:q} 2>&1"


rule train:
    input:
        run=f"{RESULTS}/{{experiment}}/seed{{seed}}/run.yaml",
        split=lambda w: f"{MANIFESTS}/{dataset_of(w.experiment)}.split.csv",
    output:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/training_summary.json",
    log:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/logs/train.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/benchmarks/train.tsv"
    threads: 1
    # the longest runs first (pipeline.config.training_priority), so they are not left to the end
    priority: lambda w: pipeline_config.training_priority(resolved_run(w))
    resources:
        gpu=0,  # a GPU profile sets train:gpu=1 (profiles/slurm)
        mem_mb=4000,
        runtime=120,
    params:
        # gpu > 1: one process per GPU under torchrun (data parallel; only rank 0 writes)
        launcher=lambda wildcards, resources: pipeline_config.training_launcher(resources.gpu),
    shell:
        "{params.launcher}pipeline train --run-config {input.run:q} --threads {threads} > {log:q} 2>&1"


rule predict:
    input:
        run=f"{RESULTS}/{{experiment}}/seed{{seed}}/run.yaml",
        trained=f"{RESULTS}/{{experiment}}/seed{{seed}}/training_summary.json",
    output:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/predictions.csv",
    log:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/logs/predict.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/benchmarks/predict.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "OMP_NUM_THREADS={threads} pipeline predict --run-config {input.run:q} > {log:q} 2>&1"
