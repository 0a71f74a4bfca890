// Overlay controls on the prediction page: show/hide a layer, set the layers' opacity.
// Delegated from the document, so they keep working after htmx swaps the results in.
document.addEventListener("input", (event) => {
  const figure = event.target.closest("figure.overlay");
  if (!figure) return;
  if (event.target.matches("[data-opacity]")) {
    figure.querySelectorAll("img.layer").forEach((img) => { img.style.opacity = event.target.value / 100; });
  }
  if (event.target.matches("[data-toggle]")) {
    const layer = figure.querySelector(`img.layer[data-layer="${event.target.dataset.toggle}"]`);
    if (layer) layer.hidden = !event.target.checked;
  }
});
