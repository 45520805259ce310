"""Tables as publishers ship them: CSV (plain, gzip'd, in a ZIP) and spreadsheets, their
headers matched by words to the columns a pipeline needs.

``headers`` (matching a header by its words), ``files`` (what a file is, and its
text), ``xlsxrows`` (an .xlsx sheet's top rows, streamed), ``sheets`` (finding a
sheet's header, loading it through Arrow), ``source`` (a file identified, then
read into DuckDB), ``extractor`` (``pipelines.TableExtractor``).
"""
