// Ferry console: the one behaviour htmx does not cover. A "select all" box ticks or clears every box
// named by its data-select-all attribute in the same form. Everything works without this file too.
"use strict";
document.addEventListener("change", (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement) || !box.dataset.selectAll || !box.form) {
    return;
  }
  for (const other of box.form.querySelectorAll("input[type=checkbox]")) {
    if (other.name === box.dataset.selectAll) {
      other.checked = box.checked;
    }
  }
});
