// /login: check the key against the API, keep it in sessionStorage, go back where we came from.
import { checkKey, clearKey, safeNext, setKey } from "./api.js";

const form = document.getElementById("sign-in-form");
const input = document.getElementById("api-key");
const button = document.getElementById("sign-in");
const error = document.getElementById("sign-in-error");

function showError(text) {
  error.textContent = text;
  error.hidden = !text;
  input.setAttribute("aria-invalid", text ? "true" : "false");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = input.value.trim();
  if (!key) {
    showError("Enter your API key.");
    input.focus();
    return;
  }
  showError("");
  button.disabled = true;
  button.textContent = "Signing in…";
  const outcome = await checkKey(key);
  button.disabled = false;
  button.textContent = "Sign in";
  if (outcome === "ok") {
    setKey(key);
    location.assign(safeNext(new URLSearchParams(location.search).get("next")));
    return;
  }
  clearKey();
  showError(outcome === "rejected" ? "That API key was not accepted" : outcome);
  input.focus();
  input.select();
});

input.focus();
