// autolabel review, shared by the review page (app.js) and adjudication (adjudicate.js): the feedback line, the
// digit keys, and the labels chosen in a form's fields.
"use strict";

window.autolabel = (() => {
  const message = document.getElementById("message");

  // feedback lives in one fixed place at the bottom of the screen, always in view
  function say(text, kind) {
    if (!message) return;
    message.textContent = text;
    message.className = "message feedback" + (text ? " shown" : "") + (kind ? " " + kind : "");
  }

  // the digit key pressed (Shift: "⇧" before it), or null
  function pressed(e) {
    const m = /^(?:Digit|Numpad)([0-9])$/.exec(e.code);
    return m ? (e.shiftKey ? "⇧" : "") + m[1] : null;
  }

  // the labels chosen in the fields of a form: field name -> option names, drawn on the fieldsets
  function selection(fields, fieldsets) {
    const selected = {};
    fields.forEach((f) => { selected[f.name] = []; });
    return {
      selected,
      current: 0,
      set(labels) {
        fields.forEach((f) => {
          const v = labels[f.name];
          selected[f.name] = v === undefined || v === null ? [] : (Array.isArray(v) ? v.slice() : [v]);
        });
      },
      // the option of field i a key picks: by position, or a rating's point by its number (the server decides,
      // per field: fields[i].keys); -1 when none
      keyed(i, key) {
        const f = fields[i];
        return f ? f.keys.indexOf(key) : -1;
      },
      // mark the chosen options, the current field, and (``model``: labels or null) the model's options
      draw(model) {
        fieldsets.forEach((fs, i) => {
          fs.classList.toggle("active", i === this.current);
          const name = fs.dataset.field;
          fs.querySelectorAll("button.option").forEach((b) => {
            const on = selected[name].includes(b.dataset.option);
            b.classList.toggle("on", on);
            b.setAttribute("aria-pressed", on ? "true" : "false");
            b.classList.toggle("model", Boolean(model) && [].concat(model[name] || []).includes(b.dataset.option));
          });
        });
      },
      // the answer, options in the field's order; null (the first empty field made current) when a field has none
      answer() {
        const out = {};
        for (const f of fields) {
          if (selected[f.name].length === 0) { this.current = fields.indexOf(f); return null; }
          const values = selected[f.name].slice().sort((a, b) => f.options.indexOf(a) - f.options.indexOf(b));
          out[f.name] = f.multi ? values : values[0];
        }
        return out;
      },
    };
  }

  return { say, pressed, selection };
})();
