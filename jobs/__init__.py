"""edufilter batch jobs on Ray: score corpus shards, then select a pretraining corpus.

Score first, decide later:

    edufilter score --model models/web --source refinedweb --input 'refinedweb/*.parquet' --output scored/
    edufilter score --model models/code --source the-stack --input 'the-stack/*.parquet' --output scored/
    edufilter score --model models/so --source stackoverflow --input 'so/*/Posts.xml' --output scored/
    edufilter select --scored scored/ --output corpus/ \\
        --token-budget web=88B --token-budget code+stackoverflow=7B      # the phi-1.5-web recipe

Modules:
    jobs.stages   the batch stages (read, score, count tokens, write parts) as plain Python, no Ray
    jobs.score    wires them into a Ray Data pipeline; embedded local Ray, or a cluster via
                  --ray-address / $RAY_ADDRESS (`ray job submit -- python -m jobs.score ...`, KubeRay RayJob)
    jobs.layout   the scored-output folder: shards, stats, completion markers, summary
    jobs.select   threshold or token-budget selection from the stats' histograms, without rescoring
    jobs.tokens   token counts: the pretraining tokenizer from a local folder, or a documented estimate
    jobs.pretrain the Phi pretraining job (its own package)
"""
