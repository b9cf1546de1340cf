"""Reference data for small end-to-end runs (tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path

from etl.errors import ConfigError


def small_reference(src: Path, dst: Path, products: list[str]) -> list[str]:
    """Copy the reference CSVs to `dst`, keeping only the USD portfolios that hold nothing but `products`.

    For small end-to-end runs (tests, benchmarks): the risk run needs prices for every position held.
    Returns the portfolio ids kept.
    """
    import csv

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("instruments.csv", "exchanges.csv"):
        (dst / name).write_text((src / name).read_text())
    with open(src / "positions.csv", newline="") as f:
        positions = list(csv.DictReader(f))
    with open(src / "portfolios.csv", newline="") as f:
        portfolios = list(csv.DictReader(f))
    others = {p["portfolio_id"] for p in positions if p["product_id"] not in products}
    keep = ({p["portfolio_id"] for p in portfolios if p["base_currency"] == "USD"} - others
            ) & {p["portfolio_id"] for p in positions}
    if not keep:
        raise ConfigError(f"no USD portfolio in {src} holds only {products}")
    for name, rows in (("portfolios.csv", portfolios), ("positions.csv", positions)):
        with open(dst / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["portfolio_id"] in keep)
    return sorted(keep)



def write_book(folder: Path, instruments: str, portfolios: str, positions: str) -> Path:
    """A reference folder of its own: the Coinbase exchange, `instruments` (instruments.csv rows, no header) and the
    whole portfolios.csv and positions.csv texts. Returns the folder."""
    folder.mkdir(parents=True)
    (folder / "exchanges.csv").write_text("exchange_id,name,api_base_url,timezone\n"
                                          "coinbase,Coinbase Exchange,https://api.exchange.coinbase.com,UTC\n")
    (folder / "instruments.csv").write_text(
        "product_id,base_currency,quote_currency,exchange_id,asset_class,display_name\n" + instruments)
    (folder / "portfolios.csv").write_text(portfolios)
    (folder / "positions.csv").write_text(positions)
    return folder
