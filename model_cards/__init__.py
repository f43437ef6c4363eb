"""Model-card templates: `default.md` (the whole card) and one `<model_type>.md` per architecture
(the architecture section, rendered into the default)."""
