"""`gatesweep data {synth,text,fineweb}`: argv -> one data tool -> a one-line summary.

Errors are raised (DataError); the top-level CLI prints them and exits 2.
"""

from __future__ import annotations

from trainer.cli_parser import Parser


def _parser() -> Parser:
    p = Parser(prog="gatesweep data", description="Make or fetch token shards.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="synthetic shards with a known Bayes-optimal loss (tiny CPU runs)")
    s.add_argument("--out", default="data/synth", help="output dir (the tiny preset reads data/synth)")
    s.add_argument("--train-tokens", type=int, default=4_000_000, help="tokens of training data (default 4M)")
    s.add_argument("--val-tokens", type=int, default=262_144, help="tokens of validation data")
    s.add_argument("--seed", type=int, default=0, help="seeds the process itself, not just the sample")
    s.add_argument("--shards", type=int, default=2, help="number of train shards")

    t = sub.add_parser("text", help="tokenize local UTF-8 text files with GPT-2 BPE")
    t.add_argument("files", nargs="+", metavar="FILES", help="UTF-8 text files (a shell glob such as DIR/*.txt)")
    t.add_argument("--out", required=True, help="output directory of the shards")
    t.add_argument("--prefix", default="text", help="shards are PREFIX_val_000000.bin, PREFIX_train_000001.bin...")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens, in whole documents")
    t.add_argument("--seed", type=int, default=0, help="seeds the document shuffle before the split")
    t.add_argument("--shard-tokens", type=int, default=10**8, help="tokens per train shard")
    t.add_argument("--split-blank-lines", action="store_true",
                   help="one document per blank-line-separated block instead of per file")
    t.add_argument("--tokenizer-file", default=None,
                   help="local gpt2.tiktoken ranks file (offline); default: tiktoken.get_encoding('gpt2')")

    f = sub.add_parser("fineweb", help="download the reference's GPT-2 FineWeb10B shards (honours HF_ENDPOINT)")
    f.add_argument("--chunks", type=int, required=True, help="train chunks of 100M tokens (1..103)")
    f.add_argument("--dir", default="data/fineweb10B", help="where the shards go (default data/fineweb10B)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        from trainer.synth import write_synth_dataset

        info = write_synth_dataset(args.out, train_tokens=args.train_tokens, val_tokens=args.val_tokens,
                                   seed=args.seed, num_train_shards=args.shards)
        print(f"synth: wrote {len(info.train_files)} train + 1 val shards to {info.out_dir} "
              f"({info.train_tokens:,} train / {info.val_tokens:,} val tokens); Bayes-optimal val loss "
              f"{info.entropy_nats_per_token:.4f} nats/token, unigram {info.unigram_entropy_nats:.3f}, "
              f"ln(vocab={info.vocab_size}) {info.ln_vocab:.3f}")
    elif args.command == "text":
        from trainer.textdata import write_text_dataset

        info = write_text_dataset(args.files, args.out, prefix=args.prefix, val_fraction=args.val_fraction,
                                  seed=args.seed, shard_tokens=args.shard_tokens,
                                  split_blank_lines=args.split_blank_lines, tokenizer_file=args.tokenizer_file)
        print(f"text: wrote {len(info.train_files)} train + {len(info.val_files)} val shards to {args.out} "
              f"({info.train_tokens:,} train tokens in {info.num_train_docs} docs / "
              f"{info.val_tokens:,} val tokens in {info.num_val_docs} docs)")
    else:
        from trainer.fineweb import download_fineweb

        res = download_fineweb(args.chunks, args.dir)
        print(f"fineweb: downloaded {len(res.downloaded)}, skipped {len(res.skipped)} already present "
              f"in {args.dir} ({res.tokens:,} tokens in {len(res.downloaded) + len(res.skipped)} files)")
    return 0
