"""One module per verb (STYLE.md): each holds its typer function and how it shows results."""
