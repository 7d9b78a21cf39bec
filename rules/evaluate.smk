rule evaluate:
    input:
        run=f"{RESULTS}/{{experiment}}/seed{{seed}}/run.yaml",
        predictions=f"{RESULTS}/{{experiment}}/seed{{seed}}/predictions.csv",
    output:
        metrics=f"{RESULTS}/{{experiment}}/seed{{seed}}/metrics.json",
        confusion_csv=f"{RESULTS}/{{experiment}}/seed{{seed}}/confusion_matrix.csv",
    params:
        code=pipeline_config.code_version("evaluate"),
    log:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/benchmarks/evaluate.tsv"
    shell:
        "pipeline evaluate --run-config {input.run:q} > {log:q} 2>&1"
