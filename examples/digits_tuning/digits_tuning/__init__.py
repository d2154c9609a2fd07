"""An example user project: a digits classifier tuned with eeipu (docs/your-pipeline.md)."""
