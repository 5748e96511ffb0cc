"""Scrapy commands of scrapy-llm-extract, registered through the ``scrapy.commands`` entry point."""
