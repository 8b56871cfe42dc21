// Tailwind 4 reads its configuration from style/tailwind.css (`@source "../app/src"`); this
// file only documents where classes come from, for editors and for Tailwind 3-era tools.
/** @type {import('tailwindcss').Config} */
module.exports = {
  content: ["./app/src/**/*.rs"],
  theme: { extend: {} },
  plugins: [],
};
