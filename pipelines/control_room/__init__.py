"""The control room's content: what each page shows of a use case (state) and its charts."""
