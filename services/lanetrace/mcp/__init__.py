"""An MCP server (Model Context Protocol, stdio) over the query engine, for
coding agents: every answer sized to a token budget the agent sets.

Modules: ``tokens`` counts tokens, ``budget`` fits an answer into a budget,
``answers`` turns engine results into budgeted answers, ``capture`` runs
``lanetrace run``/``attach``, ``server`` registers the tools with the SDK.
"""
