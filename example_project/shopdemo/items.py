"""The item the spider fills: page inputs, and the fields the model extracts.

Fields typed with ``json_schema_extra`` become the extraction schema (through
itemadapter); the input fields (``url``, ``html``, ``priority``) and the error
field are never asked of the model. Untyped fields would be nullable strings.
"""

from __future__ import annotations

import scrapy


def _extracted(json_type: str, description: str) -> scrapy.Field:
    return scrapy.Field(json_schema_extra={"type": json_type, "description": description})


class Product(scrapy.Item):
    # Inputs: set by the spider, read by the pipeline.
    url = scrapy.Field()
    html = scrapy.Field()  # the page; dropped once extracted (LLM_EXTRACT_KEEP_SOURCE)
    priority = scrapy.Field()  # "high" for new listings: extracted in real time

    # Extracted by the model.
    title = _extracted("string", "Product name as the page states it.")
    price = _extracted("number", "Current selling price, a number without currency symbol.")
    currency = _extracted("string", "ISO 4217 code of the price's currency, e.g. EUR.")
    sku = _extracted("string", "The shop's article number or SKU.")
    brand = _extracted("string", "Brand or manufacturer name.")
    availability = _extracted(
        "string", "Stock status as the page states it (schema.org term when given)."
    )

    # Set instead of the fields above when extraction failed (LLM_EXTRACT_ERROR_FIELD).
    llm_extract_error = scrapy.Field()
    # The batch row's stable id, set by collect-batches so that downstream can deduplicate
    # a pass delivered again after a crash (LLM_EXTRACT_ROW_ID_FIELD).
    llm_extract_row_id = scrapy.Field()
