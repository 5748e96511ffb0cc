"""An example Scrapy project that extracts product data with scrapy-llm-extract."""
