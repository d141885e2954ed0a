"""Asset metadata the Dagster UI renders well: inline plots and small tables."""

import base64
from pathlib import Path

import dagster as dg


def image_metadata(path: Path) -> dg.MetadataValue:
    """A PNG inlined as markdown, so the plot shows in the Dagster UI itself."""
    return dg.MetadataValue.md(
        f"![{path.stem}](data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()})"
    )


def markdown_table(df) -> dg.MetadataValue:
    """A small DataFrame as a markdown table for asset metadata."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return dg.MetadataValue.md("\n".join(lines))
