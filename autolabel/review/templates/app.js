// autolabel review: keyboard-first labeling. Every action on screen has a key; see the help overlay (?).
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const message = document.getElementById("message");
  const help = document.getElementById("help");
  const dataNode = document.getElementById("item-data");
  const item = dataNode ? JSON.parse(dataNode.textContent) : null;
  let busy = false;

  function say(text, kind) {
    if (!message) return;
    message.textContent = text;
    message.className = "message" + (kind ? " " + kind : "");
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let payload = {};
    try { payload = await response.json(); } catch (e) { payload = {}; }
    if (!response.ok) {
      const detail = payload.error || (payload.detail && JSON.stringify(payload.detail)) || response.statusText;
      throw new Error(detail);
    }
    return payload;
  }

  async function next() {
    const claimed = await post("/api/claim");
    if (claimed.item !== null) window.location.assign("/item/" + claimed.item);
    else if (item) window.location.assign("/");
    else say("Nothing for you right now: the items left are held by other reviewers, or you skipped them.");
  }

  async function act(work) {
    if (busy) return;
    busy = true;
    try { await work(); } catch (e) { say(e.message, "error"); } finally { busy = false; }
  }

  function toggleHelp(show) {
    help.hidden = show === undefined ? !help.hidden : !show;
  }

  document.querySelectorAll('[data-action="help"]').forEach((b) => b.addEventListener("click", () => toggleHelp()));
  help.addEventListener("click", (e) => { if (e.target === help) toggleHelp(false); });

  // -- the start page --------------------------------------------------------------------------------------
  if (!item) {
    const start = document.querySelector('[data-action="start"]');
    if (start) start.addEventListener("click", () => act(next));
    document.addEventListener("keydown", (e) => {
      if (e.key === "?") { toggleHelp(); e.preventDefault(); }
      else if (e.key === "Escape") toggleHelp(false);
      else if (e.key === "Enter" && start && help.hidden) { e.preventDefault(); act(next); }
    });
    return;
  }

  // -- the item page ---------------------------------------------------------------------------------------
  const fieldsets = Array.from(document.querySelectorAll("fieldset.field"));
  const note = document.getElementById("note");
  const submitButton = document.getElementById("submit");
  const acceptButton = document.getElementById("accept");
  const selected = {};
  let current = 0;
  let proposed = item.proposed;
  let revealed = !item.blind;

  item.fields.forEach((f) => { selected[f.name] = []; });
  if (proposed) setSelection(proposed);

  function setSelection(labels) {
    item.fields.forEach((f) => {
      const v = labels[f.name];
      selected[f.name] = v === undefined || v === null ? [] : (Array.isArray(v) ? v.slice() : [v]);
    });
    render();
  }

  function render() {
    fieldsets.forEach((fs, i) => {
      fs.classList.toggle("active", i === current);
      const name = fs.dataset.field;
      fs.querySelectorAll("button.option").forEach((b) => {
        const on = selected[name].includes(b.dataset.option);
        b.classList.toggle("on", on);
        b.setAttribute("aria-pressed", on ? "true" : "false");
        const byModel = revealed && proposed && [].concat(proposed[name] || []).includes(b.dataset.option);
        b.classList.toggle("model", Boolean(byModel));
      });
    });
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
    say("");
    render();
  }

  function answer() {
    const labels = {};
    for (const f of item.fields) {
      if (selected[f.name].length === 0) { current = item.fields.indexOf(f); render(); return null; }
      const order = f.options;
      const values = selected[f.name].slice().sort((a, b) => order.indexOf(a) - order.indexOf(b));
      labels[f.name] = f.multi ? values : values[0];
    }
    return labels;
  }

  async function submit() {
    const labels = answer();
    if (labels === null) { say("Choose at least one option for " + item.fields[current].name + ".", "error"); return; }
    if (!revealed) {
      const shown = await post("/api/items/" + item.id + "/reveal", { version: item.version, labels });
      document.getElementById("proposal").innerHTML = shown.html; // rendered and escaped by the server
      proposed = shown.labels;
      revealed = true;
      acceptButton.disabled = false;
      submitButton.firstChild.textContent = "Confirm ";
      render();
      say("The model's labels are marked beside yours. Press Enter to confirm yours, or A to take the model's.");
      return;
    }
    await post("/api/items/" + item.id + "/submit", { version: item.version, labels, note: note.value || null });
    await next();
  }

  async function accept() {
    if (!revealed || !proposed) { say("The proposal is hidden until you commit your own labels.", "error"); return; }
    setSelection(proposed);
    await submit();
  }

  async function skip() {
    await post("/api/items/" + item.id + "/skip", { version: item.version });
    await next();
  }

  function moveField(step) {
    current = (current + step + fieldsets.length) % fieldsets.length;
    render();
  }

  fieldsets.forEach((fs, i) => {
    fs.querySelectorAll("button.option").forEach((b, j) => b.addEventListener("click", () => {
      current = i;
      toggle(i, j);
    }));
  });
  submitButton.addEventListener("click", () => act(submit));
  acceptButton.addEventListener("click", () => act(accept));
  document.querySelector('[data-action="skip"]').addEventListener("click", () => act(skip));
  const nextField = document.querySelector('[data-action="next-field"]');
  if (nextField) nextField.addEventListener("click", () => moveField(1));

  const DIGITS = { Digit1: 0, Digit2: 1, Digit3: 2, Digit4: 3, Digit5: 4, Digit6: 5, Digit7: 6, Digit8: 7, Digit9: 8,
                   Digit0: 9, Numpad1: 0, Numpad2: 1, Numpad3: 2, Numpad4: 3, Numpad5: 4, Numpad6: 5, Numpad7: 6,
                   Numpad8: 7, Numpad9: 8, Numpad0: 9 };

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target === note) {
      if (e.key === "Escape") { note.blur(); e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); act(submit); }
      return;
    }
    if (!help.hidden) {
      if (e.key === "Escape" || e.key === "?") { toggleHelp(false); e.preventDefault(); }
      return;
    }
    if (e.code in DIGITS) { toggle(current, DIGITS[e.code] + (e.shiftKey ? 10 : 0)); e.preventDefault(); return; }
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const actions = {
      Enter: () => act(submit),
      Tab: () => moveField(e.shiftKey ? -1 : 1),
      f: () => moveField(1),
      a: () => act(accept),
      s: () => act(skip),
      n: () => note.focus(),
      "?": () => toggleHelp(true),
    };
    if (key in actions) { e.preventDefault(); actions[key](); }
  });

  // keep the lease while the page is open
  setInterval(() => {
    post("/api/items/" + item.id + "/renew").catch((e) => say("Lease lost: " + e.message + " — reload.", "error"));
  }, Math.max(5, item.lease_seconds / 3) * 1000);

  render();
  const target = document.getElementById("target");
  if (target) target.scrollIntoView({ block: "center" });
})();
