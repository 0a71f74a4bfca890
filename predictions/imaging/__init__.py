"""Pure image-analysis core of Histo-IA: tissue, stains, nuclei, heatmaps and model inference."""
