"""E-commerce logs as click events: UCI Online Retail invoices and RetailRocket clicks."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from driftrec.datasets.base import DatasetError, EventLog, data_rows, open_text

__all__ = ["load_online_retail", "load_retailrocket", "NON_PRODUCT_CODES"]

logger = logging.getLogger(__name__)

#: Online Retail stock codes that are fees, postage or manual adjustments, not products.
NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "M", "m", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"}
)


# --- UCI Online Retail ---------------------------------------------------------------------
def _retail_clock(tz: ZoneInfo) -> Callable[[str], float]:
    """Parser for InvoiceDate, cached: an invoice's lines share one time string."""
    cache: dict[str, float] = {}

    def parse(text: str) -> float:
        ts = cache.get(text)
        if ts is None:
            fmt = "%Y-%m-%d %H:%M:%S" if "-" in text else "%m/%d/%Y %H:%M"  # UCI's own layout
            ts = cache[text] = datetime.strptime(text.strip(), fmt).replace(tzinfo=tz).timestamp()
        return ts

    return parse


def load_online_retail(path: str | Path, *, max_rows: int | None = None,
                       drop_non_products: bool = True, timezone: str = "Europe/London",
                       dataset: str = "online-retail") -> EventLog:
    """UCI Online Retail (also Online Retail II) invoice lines as purchase events.

    A line with a CustomerID and Quantity > 0 is a ``purchase`` of StockCode by the customer
    at InvoiceDate (UK local time, hence ``timezone``); ``session_id`` is ``inv-<invoice>``
    and ``properties`` carry quantity and unit price. Dropped, checked in this order:
    ``bad_row``, ``no_customer``, ``cancellation`` ('C' invoices), ``adjustment`` ('A'
    bad-debt entries), ``non_positive_quantity``, ``non_product`` (postage, fees:
    :data:`NON_PRODUCT_CODES`, when ``drop_non_products``), ``bad_timestamp``, ``bad_id``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "online_retail.csv"
    log = EventLog(dataset, p, ("quantity", "unit_price"))
    clock = _retail_clock(ZoneInfo(timezone))
    with open_text(p) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        try:
            col = {name: header.index(a) for name, aliases in (
                ("invoice", ("InvoiceNo", "Invoice")), ("stock", ("StockCode",)),
                ("qty", ("Quantity",)), ("date", ("InvoiceDate",)),
                ("price", ("UnitPrice", "Price")), ("customer", ("CustomerID", "Customer ID")),
            ) for a in aliases if a in header}
            inv, stock, qty_c, date_c, price_c, cust_c = (
                col[k] for k in ("invoice", "stock", "qty", "date", "price", "customer"))
        except KeyError:
            raise DatasetError(f"{p}: not an Online Retail file (header {header[:8]})") from None
        width = len(header)
        for n, row in enumerate(data_rows(f, ",", max_rows), start=1):
            log.stats.rows_read += 1
            drop = log.stats.dropped
            if len(row) != width:
                drop["bad_row"] += 1
                continue
            customer = row[cust_c].strip().removesuffix(".0")
            invoice = row[inv].strip()
            if not customer:
                drop["no_customer"] += 1
            elif invoice.startswith("C"):
                drop["cancellation"] += 1
            elif invoice.startswith("A"):
                drop["adjustment"] += 1
            else:
                try:
                    qty, price = int(float(row[qty_c])), float(row[price_c])
                except ValueError:
                    drop["bad_row"] += 1
                    continue
                code = row[stock].strip()
                if qty <= 0:
                    drop["non_positive_quantity"] += 1
                elif drop_non_products and code in NON_PRODUCT_CODES:
                    drop["non_product"] += 1
                else:
                    try:
                        ts = clock(row[date_c])
                    except ValueError:
                        drop["bad_timestamp"] += 1
                        continue
                    log.add(n, ts, customer, code, "purchase", None, f"inv-{invoice}",
                             (qty, price))
    return log.finish()


# --- RetailRocket --------------------------------------------------------------------------
def load_retailrocket(path: str | Path, *, max_rows: int | None = None,
                      dataset: str = "retailrocket") -> EventLog:
    """RetailRocket ``events.csv``: view / addtocart / transaction become view / add_to_cart /
    purchase; timestamps are Unix milliseconds; ``transactionid`` goes to ``properties``.
    The file is not time-sorted; the result is. Dropped: ``bad_row``, ``unknown_type``,
    ``bad_timestamp``, ``bad_id``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "events.csv"
    log = EventLog(dataset, p, ("transaction_id",))
    kinds = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
    with open_text(p) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:4] != ["timestamp", "visitorid", "event", "itemid"]:
            raise DatasetError(f"{p}: not a RetailRocket events file (header {header[:5]})")
        for n, row in enumerate(data_rows(f, ",", max_rows), start=1):
            log.stats.rows_read += 1
            try:
                ts = int(row[0]) / 1000.0
                kind = kinds.get(row[2])
            except (IndexError, ValueError):
                log.stats.dropped["bad_row"] += 1
                continue
            if kind is None:
                log.stats.dropped["unknown_type"] += 1
                continue
            tid = row[4].strip() if len(row) > 4 else ""
            log.add(n, ts, row[1], row[3], kind, None, None, (tid,) if tid else None)
    return log.finish()
