"""Staged pre-training and mid-training (GLM-4.5's data stages at any scale): `slide pretrain CONFIG`.

    streams.py   documents read lazily from JSONL / Parquet / text folders; the weighted mixture (shares of text)
    packer.py    documents -> fixed-length rows (truncate or best-fit) with document-boundary attention
    schedule.py  one learning rate over all stages' tokens (warmup, cosine or WSD) and the batch-size warmup
    optim.py     torch.optim.Muon for the 2-D hidden matrices, AdamW for the rest
    corpora.py   miniature corpora built offline (code, text, repo-level, reasoning traces, needle documents)
    evaluate.py  held-out loss per source, needle retrieval by context length
    config.py    the config: stages, mixtures, schedule, optimizer (PretrainConfig)
    runner.py    the stages loop, checkpoints, exact resume, summary.json
    report.py    the run's plot (training loss with stage boundaries, held-out loss, needle accuracy)
    chain.py     --chain: SFT -> RL -> eval from the pre-trained model, one report table
"""
