"""Tables: what a table is (:mod:`.spec`) and the one lookup pipeline every table runs (:mod:`.pipeline`)."""
