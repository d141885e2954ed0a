"""Asset metadata the Dagster UI renders well: inline plots and small tables."""

import base64
import warnings
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


def versioned_output(value, version: str, metadata: dict) -> dg.Output:
    """An output whose Dagster data version is ``version`` (a content hash), so staleness in
    Dagster means "the data changed". The parameter is still marked beta; we rely on it knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(value, data_version=dg.DataVersion(version), metadata=metadata)


def validation_failure(e) -> dg.Failure:
    """A DataValidationError as a Dagster failure whose metadata shows every failing column and
    check, and the first failure cases, in the UI."""
    cases = e.failure_cases
    return dg.Failure(
        description=str(e),
        metadata={
            "failure_cases": len(cases),
            "by_column_and_check": markdown_table(cases.groupby(["column", "check"]).size().reset_index(name="n")),
            "first_cases": markdown_table(cases.head(20).astype(str)),
        },
    )
