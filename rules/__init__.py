"""Pure rule evaluation: sensor conditions (报警) and site grading (预警). No I/O here."""
