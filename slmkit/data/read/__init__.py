"""Reading the data stage's inputs: table files, chat-log shapes, documents, stored datasets and collections.

sources.py      the configured sources resolved and read (files, folders, URLs), with licence and sha256
tables.py       CSV/TSV/JSON/JSONL/Parquet/Excel rows (gzip too), each with a locator
chatlogs.py     OpenAI/ShareGPT/Alpaca/SQuAD/preference/HH-RLHF rows -> the `messages` shape
documents.py    TXT/Markdown/reST/PDF/HTML files and URLs -> Document (sections)
stores.py       a saved HF dataset's rows, a ChromaDB collection's chunks
"""
