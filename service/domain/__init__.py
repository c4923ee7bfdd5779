"""Pure contact-centre domain: events, validation, time arithmetic. Standard library only."""
