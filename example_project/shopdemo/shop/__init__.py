"""A small shop generated in memory, so that the example crawls real HTML offline.

``catalog`` holds the products (the truth the tests compare extractions with),
``pages`` renders them with the clutter of real shop themes, and ``server``
serves them on a loopback port for the spider.
"""
