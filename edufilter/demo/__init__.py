"""`edufilter demo`: the whole product end to end on the bundled sample (or on
the shared real data with `--data`), then a report a person wants to look at.

The steps call the same public command entry points a user types
(`edufilter label`, `train`, `evaluate`, `score`, `select`, `pretrain`,
`serve`), in-process through `edufilter.cli.main` or, for the server, as a
subprocess. See `edufilter.demo.pipeline`.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from edufilter.demo.pipeline import main as pipeline_main

    return pipeline_main(argv)


__all__ = ["main"]
