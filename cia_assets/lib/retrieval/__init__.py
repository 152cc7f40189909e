"""From a question to ranked code: the query plan and the search."""
