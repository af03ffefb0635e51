window.__NEXT_P = window.__NEXT_P || [];
