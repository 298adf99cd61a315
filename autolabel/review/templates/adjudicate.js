// autolabel adjudication: settle items whose reviewers disagree, keyboard first (see the help overlay, ?).
// Served after labels.js (window.autolabel: the feedback line, digit keys, the chosen labels; web.py _STATIC).
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const { say, pressed } = window.autolabel;
  const help = document.getElementById("help");
  const dataNode = document.getElementById("item-data");
  const item = dataNode ? JSON.parse(dataNode.textContent) : null;
  let busy = false;

  function toggleHelp(show) {
    help.hidden = show === undefined ? !help.hidden : !show;
    const close = help.querySelector("button.close");
    if (!help.hidden && close) close.focus();
  }
  help.querySelectorAll("button.close").forEach((b) => b.addEventListener("click", () => toggleHelp(false)));
  help.addEventListener("keydown", (e) => {  // focus stays inside the dialog
    if (e.key === "Tab") { e.preventDefault(); const close = help.querySelector("button.close"); if (close) close.focus(); }
  });

  document.querySelectorAll('[data-action="help"]').forEach((b) => b.addEventListener("click", () => toggleHelp()));
  help.addEventListener("click", (e) => { if (e.target === help) toggleHelp(false); });

  function helpKeys(e) {
    if (e.key === "?") { toggleHelp(); e.preventDefault(); return true; }
    if (!help.hidden) {
      if (e.key === "Escape") { toggleHelp(false); e.preventDefault(); }
      return true;
    }
    return false;
  }

  // -- the list ---------------------------------------------------------------------------------------------
  if (!item) {
    const links = Array.from(document.querySelectorAll("a[data-open]"));
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || helpKeys(e)) return;
      let target = null;
      if (e.key === "Enter") target = links[0];
      else if (/^[1-9]$/.test(e.key)) target = links[Number(e.key) - 1];
      if (target) { e.preventDefault(); window.location.assign(target.href); }
    });
    return;
  }

  // -- one item ---------------------------------------------------------------------------------------------
  const fieldsets = Array.from(document.querySelectorAll("fieldset.field"));
  const answers = Array.from(document.querySelectorAll("[data-review]"));
  const note = document.getElementById("note");
  const form = window.autolabel.selection(item.fields, fieldsets);
  const selected = form.selected;
  let taken = -1;

  function setSelection(labels) {
    form.set(labels);
    render();
  }

  function render() {
    form.draw(item.proposed);
    answers.forEach((a, i) => a.classList.toggle("taken", i === taken));
  }

  function toggle(fieldIndex, optionIndex) {
    const f = item.fields[fieldIndex];
    if (!f || optionIndex >= f.options.length) return;
    const option = f.options[optionIndex];
    const chosen = selected[f.name];
    if (!f.multi) selected[f.name] = chosen[0] === option ? [] : [option];
    else if (chosen.includes(option)) selected[f.name] = chosen.filter((o) => o !== option);
    else if (chosen.length >= f.max) { say(f.name + ": at most " + f.max + " options", "error"); return; }
    else chosen.push(option);
    taken = -1;
    say("");
    render();
  }

  function takeReview() {
    if (!item.reviews.length) return;
    taken = (taken + 1) % item.reviews.length;
    setSelection(item.reviews[taken].labels);
    say("Labels of " + item.reviews[taken].reviewer + ". Enter settles on them.");
  }

  function takeModel() {
    taken = -1;
    setSelection(item.proposed);
    say("The model's labels. Enter settles on them.");
  }

  function later() {
    window.location.assign(item.next === null ? "/adjudicate" : "/adjudicate/" + item.next);
  }

  let force = false;

  async function settle() {
    if (busy) return;
    const chosen = form.answer();
    if (chosen === null) {
      render();
      say("Choose at least one option for " + item.fields[form.current].name + ".", "error");
      return;
    }
    if (item.took_part && !force) {
      force = true;
      say("You reviewed this item yourself. Press Enter again to settle it anyway (recorded as forced), or S to leave it to another adjudicator.", "error");
      return;
    }
    busy = true;
    try {
      const response = await fetch("/api/adjudicate/" + item.id, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ version: item.version, labels: chosen, note: note.value || null, force }),
      });
      let payload = {};
      try { payload = await response.json(); } catch (e) { payload = {}; }
      if (!response.ok) throw new Error(payload.error || response.statusText);
      window.location.assign(payload.next === null ? "/adjudicate" : "/adjudicate/" + payload.next);
    } catch (e) {
      say(e.message, "error");
    } finally {
      busy = false;
    }
  }

  function moveField(step) {
    form.current = (form.current + step + fieldsets.length) % fieldsets.length;
    render();
    if (fieldsets[form.current]) fieldsets[form.current].scrollIntoView({ block: "nearest" });
  }

  fieldsets.forEach((fs, i) => {
    fs.querySelectorAll("button.option").forEach((b, j) => b.addEventListener("click", () => {
      form.current = i;
      toggle(i, j);
    }));
  });
  const on = (action, fn) => {
    const b = document.querySelector('[data-action="' + action + '"]');
    if (b) b.addEventListener("click", fn);
  };
  on("settle", settle);
  on("take-review", takeReview);
  on("take-model", takeModel);
  on("next-item", later);
  on("next-field", () => moveField(1));

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target === note) {
      if (e.key === "Escape") { note.blur(); e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); settle(); }
      return;
    }
    if (helpKeys(e)) return;
    const digit = pressed(e);  // picks the option showing that key in the current field
    if (digit !== null) {
      const option = form.keyed(form.current, digit);
      if (option >= 0) toggle(form.current, option);
      else if (item.fields[form.current]) say(item.fields[form.current].name + ": no option on key " + digit, "error");
      e.preventDefault();
      return;
    }
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const actions = {
      Enter: settle,
      ArrowDown: () => moveField(1),
      ArrowUp: () => moveField(-1),
      f: () => moveField(e.shiftKey ? -1 : 1),
      r: takeReview,
      m: takeModel,
      s: later,
      l: () => window.location.assign("/adjudicate"),
      n: () => note.focus(),
    };
    if (key in actions) { e.preventDefault(); actions[key](); }
  });

  setSelection(item.start);
  const target = document.getElementById("target");
  if (target) target.scrollIntoView({ block: "center" });
})();
