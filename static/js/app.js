// Small progressive enhancements; every page works without them.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const text = source.value !== undefined && source.tagName !== "PRE" ? source.value : source.textContent;
  const done = () => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done);
  }
});

function fallbackCopy(text, done) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  done();
}

// Close the workspace switcher when clicking elsewhere.
document.addEventListener("click", (event) => {
  document.querySelectorAll("details.switcher[open]").forEach((d) => {
    if (!d.contains(event.target)) d.removeAttribute("open");
  });
});

// Confirm destructive actions marked with data-confirm.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// The menu button of narrow screens: the sidebar slides in over the page. While it is closed
// there it is also inert, so Tab never walks into links nobody can see (CSS hides it as well,
// for the moment before this script runs).
const narrowScreen = window.matchMedia("(max-width: 860px)");

function setNavigation(open) {
  const shell = document.querySelector(".shell");
  const button = document.querySelector("[data-nav-toggle]");
  const sidebar = document.getElementById("sidebar");
  if (!shell || !button || !sidebar) return;
  shell.classList.toggle("nav-open", open);
  button.setAttribute("aria-expanded", open ? "true" : "false");
  sidebar.inert = narrowScreen.matches && !open;
}

document.addEventListener("click", (event) => {
  const toggle = event.target.closest("[data-nav-toggle]");
  if (toggle) {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    setNavigation(open);
    if (open) document.querySelector("#sidebar a, #sidebar summary")?.focus();
  } else if (event.target.closest("[data-nav-close]")) {
    setNavigation(false);
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || !document.querySelector(".shell.nav-open")) return;
  setNavigation(false);
  document.querySelector("[data-nav-toggle]")?.focus();
});

narrowScreen.addEventListener("change", () => setNavigation(false));
setNavigation(false);
