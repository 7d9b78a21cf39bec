rule report:
    input:
        run=f"{RESULTS}/{{experiment}}/seed{{seed}}/run.yaml",
        metrics=f"{RESULTS}/{{experiment}}/seed{{seed}}/metrics.json",
    output:
        html=report(
            f"{RESULTS}/{{experiment}}/seed{{seed}}/report.html",
            category="Experiment reports",
            labels={"experiment": "{experiment}", "seed": "{seed}"},
        ),
        figures=report(
            directory(f"{RESULTS}/{{experiment}}/seed{{seed}}/figures"),
            patterns=["{figure}.png"],
            category="Figures",
            subcategory="{experiment} seed {seed}",
            labels={"experiment": "{experiment}", "seed": "{seed}", "figure": "{figure}"},
        ),
    params:
        code=pipeline_config.code_version("report"),
    log:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/logs/report.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/benchmarks/report.tsv"
    shell:
        "pipeline report --run-config {input.run:q} > {log:q} 2>&1"


def compare_baselines():
    from pipeline.cli import baselines_of

    return [f"{task}={name}" for task, name in sorted(baselines_of(CONFIG).items())]


rule compare:
    input:
        metrics=expand(f"{RESULTS}/{{experiment}}/seed{{seed}}/metrics.json", experiment=EXPERIMENTS, seed=SEEDS),
        # optimizer steps of each run: the comparison flags experiments trained for other step counts
        trained=expand(f"{RESULTS}/{{experiment}}/seed{{seed}}/training_summary.json", experiment=EXPERIMENTS, seed=SEEDS),
    output:
        csv=f"{RESULTS}/comparison.csv",
        html=report(f"{RESULTS}/comparison.html", category="Comparison", labels={"report": "all experiments"}),
        figures=report(
            directory(f"{RESULTS}/comparison_figures"),
            patterns=["{figure}.png"],
            category="Comparison",
            labels={"report": "figure", "figure": "{figure}"},
        ),
    params:
        runs=expand(f"{RESULTS}/{{experiment}}/seed{{seed}}", experiment=EXPERIMENTS, seed=SEEDS),
        baselines=compare_baselines(),
        out_dir=RESULTS,
        n_bootstrap=CONFIG["evaluation"]["n_bootstrap"],
        bootstrap_seed=CONFIG["evaluation"]["bootstrap_seed"],
        code=pipeline_config.code_version("compare"),
    log:
        "logs/compare.log",
    benchmark:
        "benchmarks/compare.tsv"
    shell:
        "pipeline compare --runs {params.runs:q} --baseline {params.baselines:q} --out-dir {params.out_dir:q} "
        "--n-bootstrap {params.n_bootstrap} --bootstrap-seed {params.bootstrap_seed} > {log:q} 2>&1"
