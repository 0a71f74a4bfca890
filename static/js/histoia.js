// The pages' behaviour, loaded by every page (templates/base.html). The Content-Security-Policy
// (histoia/settings.py) refuses inline scripts, on*= handlers and style="…" attributes, so pages
// mark elements with data- attributes and the listeners here act on them. They are delegated from
// the document, so they keep working on the parts htmx swaps in every few seconds.

// Sizes and colours the server computed (a histogram bar's height, a legend's colours): the policy
// refuses them as style="…", not as element.style. htmx fires htmx:load on the body once the page
// is ready, then on every element it swaps in.
document.addEventListener("htmx:load", (event) => {
  for (const el of event.target.querySelectorAll("[data-height]")) el.style.height = `${el.dataset.height}%`;
  for (const el of event.target.querySelectorAll("[data-colour]")) el.style.background = el.dataset.colour;
  for (const el of event.target.querySelectorAll("[data-gradient]")) {
    el.style.background = `linear-gradient(to right, ${el.dataset.gradient})`;
  }
});

// A field marked data-autosubmit submits its form when changed: the history's filters, the pipeline
// to run, the prediction shown in the viewer.
document.addEventListener("change", (event) => {
  if (event.target.matches("[data-autosubmit]")) event.target.form.requestSubmit();
});

// History: "Compare the two ticked" sends the older ticked prediction as a, the newer as b.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.matches("[data-compare]")) return;
  const picked = [...form.querySelectorAll("input[name=pick]:checked")].map((c) => c.value);
  if (picked.length !== 2) {
    event.preventDefault();
    alert("Tick exactly two predictions of the same experiment.");
    return;
  }
  form.a.value = picked[1];
  form.b.value = picked[0];
  form.querySelectorAll("input[name=pick]").forEach((c) => { c.disabled = true; });
});

// Overlay controls on the prediction page: show/hide a layer, set the layers' opacity.
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
