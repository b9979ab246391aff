"""embedmig where applications are: retrievers over an alias for RAG frameworks, each an extra
(``pip install "embedmig[langchain]"``) loaded only when imported."""
