window.ngPolyfills = true;
